from workflow_scripts.entry._run import rule_logging

with rule_logging(snakemake) as log:
    import cv2

    cv2.setNumThreads(snakemake.threads)  # stay within the job's share of the cores
    from workflow_scripts.real_shards import run_crop_shards

    cams = snakemake.params.cameras
    crop = dict(snakemake.params.crop)
    num_chunks = crop.pop("num_chunks")
    run_crop_shards(
        masks_h5=dict(zip(cams, snakemake.input.masks)),
        cameras_json=snakemake.input.cameras, centers_csv=snakemake.input.centers,
        normalization_json=snakemake.input.normalization, out_h5=snakemake.output.shard,
        chunk=int(snakemake.wildcards.chunk), num_chunks=num_chunks, params=crop, session=snakemake.wildcards.session,
        workers=snakemake.threads,
    )
    from workflow_scripts.qc_plots import plot_crop_qc

    plot_crop_qc(snakemake.output.shard, snakemake.output.qc, title=f"{snakemake.wildcards.session} chunk {snakemake.wildcards.chunk}")
