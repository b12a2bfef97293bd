from workflow_scripts.entry._run import rule_logging

with rule_logging(snakemake) as log:
    import json

    from workflow_scripts.frames import run_extract_frames

    sync = json.loads(open(snakemake.input.sync).read())[snakemake.wildcards.camera]
    frames = snakemake.params.frames
    n = run_extract_frames(
        video=snakemake.input.video, out_h5=snakemake.output[0], start_frame=frames["start"],
        max_frames=frames["max_frames"], stride=frames["stride"], offset=snakemake.params.offset,
        expected={k: sync[k] for k in ("width", "height")} | {"camera": snakemake.wildcards.camera},
        camera=snakemake.wildcards.camera, compression=frames["compression"],
    )
    log.info("extracted %d frames", n)
