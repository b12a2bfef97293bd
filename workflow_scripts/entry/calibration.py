from workflow_scripts.entry._run import rule_logging

with rule_logging(snakemake) as log:
    import json

    from workflow_scripts.atomic import write_json
    from workflow_scripts.calibration import read_calibration
    from workflow_scripts.cameras import cameras_to_json
    from workflow_scripts.errors import InputError

    sync = json.loads(open(snakemake.input.sync).read())
    sizes = {(v["width"], v["height"]) for v in sync.values()}
    if len(sizes) != 1:
        raise InputError(f"{snakemake.input.sync}: cameras record at different sizes {sorted(sizes)}; this pipeline expects one size per session.")
    path = snakemake.params.path
    cams, fmt = read_calibration(path, image_size=sizes.pop())
    by_name = {c.name: c for c in cams}
    wanted = list(snakemake.params.cameras)
    if set(wanted) - set(by_name):
        if len(cams) == len(wanted):  # unnamed/differently named cameras: match by order
            log.warning("calibration names %s differ from video names %s; matching by order", list(by_name), wanted)
            for cam, name in zip(cams, wanted):
                cam.name = name
            by_name = {c.name: c for c in cams}
        else:
            raise InputError(f"{path}: calibration has cameras {list(by_name)} but the session's videos are {wanted}. "
                             "Fix: name the videos like the calibration's cameras in config.yaml (sessions.<name>.videos).")
    write_json(snakemake.output[0], cameras_to_json([by_name[n] for n in wanted], source=path, fmt=fmt))
    log.info("%d cameras from %s (%s)", len(wanted), path, fmt)
