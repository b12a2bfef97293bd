from workflow_scripts.entry._run import rule_logging

with rule_logging(snakemake) as log:
    import json

    import cv2

    cv2.setNumThreads(snakemake.threads)  # stay within the job's share of the cores
    from workflow_scripts.masks import MaskConfig, run_masks

    camera = snakemake.wildcards.camera
    sync = json.loads(open(snakemake.input.sync).read())[camera]
    frames = snakemake.params.frames
    qc = run_masks(
        snakemake.input.video, snakemake.output.masks, snakemake.output.qc, MaskConfig(**snakemake.params.masks),
        start_frame=frames["start"], max_frames=frames["max_frames"], stride=frames["stride"],
        offset=snakemake.params.offset, expected={k: sync[k] for k in ("width", "height")} | {"camera": camera},
        camera=camera, external=snakemake.input.external[0] if snakemake.input.external else None,
        store_frames=snakemake.params.store_frames, workers=snakemake.threads,
    )
    log.info("%d frames, %d valid masks; flags: %s", len(qc), int(qc["valid"].sum()), qc["reason"].value_counts().to_dict())
