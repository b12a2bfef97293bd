# Real recordings -> mouse-centred, exactly posed crops in HDF5 shards.
# Per session: check_sync -> masks (per camera: decodes the video once; keeps masks and the
# pixels around the mouse) -> calibration -> locate_mouse -> crop_shards (per chunk).


rule check_sync:
    input:
        videos=lambda w: list(sessions()[w.session]["videos"].values()),
    output:
        "results/frames/{session}/sync.json",
    params:
        videos=lambda w: sessions()[w.session]["videos"],
        offsets=lambda w: sessions()[w.session].get("frame_offsets") or {},
    log:
        log_path("check_sync", "{session}"),
    benchmark:
        bench_path("check_sync", "{session}")
    threads: 1
    resources:
        mem_mb=500,
        runtime=10,
    conda:
        "../envs/preprocess.yaml"
    script:
        "../workflow_scripts/entry/check_sync.py"


rule masks:
    input:
        video=lambda w: sessions()[w.session]["videos"][w.camera],
        sync="results/frames/{session}/sync.json",
        external=lambda w: [(sessions()[w.session].get("masks") or {})[w.camera]] if (sessions()[w.session].get("masks") or {}).get(w.camera) else [],
    output:
        masks="results/masks/{session}/{camera}.h5",
        qc="results/masks/{session}/{camera}_qc.csv",
    params:
        frames=config["frames"],
        offset=lambda w: (sessions()[w.session].get("frame_offsets") or {}).get(w.camera, 0),
        masks=config["masks"],
        # whole frames only when the crop keeps the background; else the pixels around the mouse
        store_frames="full" if config["crop"]["background"] == "keep" else "mouse",
    log:
        log_path("masks", "{session}/{camera}"),
    benchmark:
        bench_path("masks", "{session}/{camera}")
    threads: 2
    resources:
        mem_mb=2000,
        runtime=120,
    conda:
        "../envs/preprocess.yaml"
    script:
        "../workflow_scripts/entry/masks.py"


rule calibration:
    input:
        files=lambda w: calibration_files(w.session),
        sync="results/frames/{session}/sync.json",
    output:
        "results/calibration/{session}/cameras.json",
    params:
        path=lambda w: sessions()[w.session]["calibration"],
        cameras=lambda w: cameras(w.session),
    log:
        log_path("calibration", "{session}"),
    benchmark:
        bench_path("calibration", "{session}")
    threads: 1
    resources:
        mem_mb=500,
        runtime=10,
    conda:
        "../envs/preprocess.yaml"
    script:
        "../workflow_scripts/entry/calibration.py"


rule locate_mouse:
    input:
        cameras="results/calibration/{session}/cameras.json",
        qc=lambda w: expand("results/masks/{{session}}/{camera}_qc.csv", camera=cameras(w.session)),
        masks=lambda w: expand("results/masks/{{session}}/{camera}.h5", camera=cameras(w.session)),
        # only the body-model centre needs the MAMMAL model (else a new model would rerun locate)
        body_model=["results/body_model/mammal_mouse.npz"] if config["locate"]["center"] == "body_model" else [],
    output:
        centers="results/locate/{session}/centers.csv",
        normalization="results/locate/{session}/normalization.json",
        qc=report("results/locate/{session}/qc.png", category="Preprocessing", caption="../docs/report/locate.rst"),
    params:
        locate=config["locate"],
        normalize=config["normalize"],
        cameras=lambda w: cameras(w.session),
    log:
        log_path("locate_mouse", "{session}"),
    benchmark:
        bench_path("locate_mouse", "{session}")
    threads: 2
    resources:
        mem_mb=1000,
        runtime=30,
    conda:
        "../envs/preprocess.yaml"
    script:
        "../workflow_scripts/entry/locate_mouse.py"


rule crop_shards:
    input:
        masks=lambda w: expand("results/masks/{{session}}/{camera}.h5", camera=cameras(w.session)),
        cameras="results/calibration/{session}/cameras.json",
        centers="results/locate/{session}/centers.csv",
        normalization="results/locate/{session}/normalization.json",
    output:
        shard="results/shards/real/{session}/chunk{chunk}.h5",
        qc=report("results/shards/real/{session}/chunk{chunk}_qc.png", category="Preprocessing", caption="../docs/report/crops.rst"),
    params:
        crop=config["crop"],
        cameras=lambda w: cameras(w.session),
    log:
        log_path("crop_shards", "{session}/chunk{chunk}"),
    benchmark:
        bench_path("crop_shards", "{session}/chunk{chunk}")
    threads: 2
    resources:
        mem_mb=4000,
        runtime=120,
    conda:
        "../envs/preprocess.yaml"
    script:
        "../workflow_scripts/entry/crop_shards.py"
