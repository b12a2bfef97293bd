"""Fetch the MAMMAL mouse body model text files from its public repository, verified.

The files are public but carry no license, so the project never commits them: the
``download_body_model`` rule fetches them at a pinned commit and checks every file against the
sha256 sums recorded here. Users with a local copy set ``body_model.dir`` (or the environment
variable ``MAMMAL_MOUSE_DIR``) and nothing is downloaded. Tests and CI never download.

Cite: An et al., "Three-dimensional surface motion capture of multiple freely moving pigs using
MAMMAL", Nature Communications 2023; Bolanos et al., Nature Methods 2021 (the mouse mesh).
"""
from __future__ import annotations

import hashlib
import logging
import urllib.request
from pathlib import Path

from workflow_scripts.atomic import atomic_path

REPOSITORY = "anl13/MAMMAL_mouse"
COMMIT = "22a84ee03092a2666fc39ac9a1210f998f6f6071"
BASE_URL = f"https://raw.githubusercontent.com/{REPOSITORY}/{COMMIT}/"

# file name -> (path in the upstream repository, sha256)
FILES: dict[str, tuple[str, str]] = {
    "bone_length_mapper.txt": ("mouse_model/mouse_txt/bone_length_mapper.txt", "d2c2b0da9134155db14a561d043aa4e823d92d41f2184e57f3bbaef8d47617f4"),
    "faces_tex.txt": ("mouse_model/mouse_txt/faces_tex.txt", "f58823473b5042441a37f24ae2fc3ec34fddad1a8485aff53c88b441815e726b"),
    "faces_vert.txt": ("mouse_model/mouse_txt/faces_vert.txt", "99624648bc127b396de0273903646233e8b0b872866afec6d86fe1aff3f460e2"),
    "init_joint_euler.txt": ("mouse_model/mouse_txt/init_joint_euler.txt", "693472414262fd39f6e08a106ed38c9992ccbccbea9ce9f5064057a77534f68c"),
    "init_joint_rot_mat.txt": ("mouse_model/mouse_txt/init_joint_rot_mat.txt", "1feb45b1d9cd5da1eafbc8dad1024ebf693c74a9d0a4bbb21a98f0bf4e999bd4"),
    "init_joint_rotvec.txt": ("mouse_model/mouse_txt/init_joint_rotvec.txt", "af9c832119bef990b9e90cc9010805b8c6d3075e51d3e798f192b239e4c716ae"),
    "init_joint_trans.txt": ("mouse_model/mouse_txt/init_joint_trans.txt", "d574523bd2b4bdea8f43973c3790bf2b183718b72e01d0ae19e5f0141fdefa3e"),
    "joint_names.txt": ("mouse_model/mouse_txt/joint_names.txt", "c12f39ac5e683545a9af3563215c6f1bd4b58a798e349db80782bac9dcc19c24"),
    "parents.txt": ("mouse_model/mouse_txt/parents.txt", "0666484b0df320529ef0ed31d30b3d49414b18bf1e354de6d35ffb2f2558724c"),
    "reduced_face_1800.txt": ("mouse_model/mouse_txt/reduced_face_1800.txt", "2421a58d611b574fc1e48262398b6149cb2561e99f215740af28b43f593531bd"),
    "reduced_face_3600.txt": ("mouse_model/mouse_txt/reduced_face_3600.txt", "ae9fa6a94df336cc5307d02fda617196aa979b8587e3173cf1159a9a5f5a362a"),
    "reduced_ids_1800.txt": ("mouse_model/mouse_txt/reduced_ids_1800.txt", "2a130bbcd2353805b30a536d8e0a08996f3e6fe9f140c87599e541645472e4ff"),
    "reduced_ids_3600.txt": ("mouse_model/mouse_txt/reduced_ids_3600.txt", "c18f6178a16c86e2ed305dd2c8e64c875584f869d844686cc1e0cb38b5e58995"),
    "skinning_weights.txt": ("mouse_model/mouse_txt/skinning_weights.txt", "2859b3997f31b5a3bc9fdc0ad863f04dafce42202bb8a6f37eb7f8cf6464849e"),
    "t_pose_joints.txt": ("mouse_model/mouse_txt/t_pose_joints.txt", "c397c691f1f85f4e7811a017bfbcc7a28883ddcdf86f6487c602f1d10bd498ad"),
    "textures.txt": ("mouse_model/mouse_txt/textures.txt", "ad544869ab6c5217e6eff12ac098e16c6a6b2df1d22fc0915ff6dc5c971d3ab4"),
    "vertices.txt": ("mouse_model/mouse_txt/vertices.txt", "681d4f85ff34b697a1d46d6acbf573b2470c1b54cb15bf140c0a47f95b841675"),
    "reg_weights.txt": ("mouse_model/reg_weights.txt", "b733f710a027b57200e8800344a9b3f3480e4581bfd5a1d54e411d549ce1c839"),
    "bone_length_name.txt": ("mouse_model/bone_length_name.txt", "638050ee8bee118995d068c44a84f84fe5e3b5cb7e42c9c8d49c83f0c820b22a"),
    "keypoint22_mapper.json": ("mouse_model/keypoint22_mapper.json", "9c3f9057c4ec8d7e3d0cc611676bc0807be5059d10b43eca3a2cd3c8bdd692ac"),
}

log = logging.getLogger(__name__)


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download_body_model(out_dir: str | Path, base_url: str = BASE_URL, timeout_s: float = 60.0) -> list[Path]:
    """Download every file of :data:`FILES` into ``out_dir``, verifying sha256 before it lands.

    A file whose checksum differs is never written; the error names it and the fix.
    """
    out_dir = Path(out_dir)
    written = []
    for name, (upstream, sha) in FILES.items():
        target = out_dir / name
        if target.exists() and sha256_file(target) == sha:
            written.append(target)
            continue
        url = base_url + upstream
        log.info("downloading %s", url)
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as r:
                data = r.read()
        except OSError as e:
            raise RuntimeError(
                f"could not download {url} ({e}). Fix: put the MAMMAL mouse text files in a folder and set "
                "body_model.dir in config.yaml (or the environment variable MAMMAL_MOUSE_DIR) to it."
            ) from e
        got = hashlib.sha256(data).hexdigest()
        if got != sha:
            raise RuntimeError(f"{url}: sha256 {got} differs from the pinned {sha}; the file was not saved. "
                               "Fix: check the commit in workflow_scripts/download.py or use a local copy (body_model.dir).")
        with atomic_path(target) as tmp:
            tmp.write_bytes(data)
        written.append(target)
    return written
