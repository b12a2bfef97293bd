from workflow_scripts.entry._run import rule_logging

with rule_logging(snakemake) as log:
    from workflow_scripts.locate import run_locate_mouse

    qc = dict(zip(snakemake.params.cameras, snakemake.input.qc))
    params = {**snakemake.params.locate, **snakemake.params.normalize}
    masks = dict(zip(snakemake.params.cameras, snakemake.input.masks))
    body_model = snakemake.input.body_model[0] if snakemake.input.body_model else None
    run_locate_mouse(snakemake.input.cameras, qc, snakemake.output.centers, snakemake.output.normalization, params, masks,
                     snakemake.threads, body_model_npz=body_model)

    from workflow_scripts.qc_plots import plot_locate_qc

    plot_locate_qc(snakemake.output.centers, snakemake.output.qc, title=f"session {snakemake.wildcards.session}")
