from workflow_scripts.entry._run import rule_logging

with rule_logging(snakemake) as log:
    from workflow_scripts.masks import MaskConfig, run_masks

    qc = run_masks(snakemake.input.frames, snakemake.output.masks, snakemake.output.qc, MaskConfig(**snakemake.params.masks),
                   external=snakemake.input.external[0] if snakemake.input.external else None)
    log.info("%d frames, %d valid masks; flags: %s", len(qc), int(qc["valid"].sum()), qc["reason"].value_counts().to_dict())
