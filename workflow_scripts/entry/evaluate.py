from workflow_scripts.entry._run import rule_logging

with rule_logging(snakemake) as log:
    from model.evaluate import run_evaluate

    run_evaluate(
        checkpoint=snakemake.input.checkpoint,
        synthetic_shards=list(snakemake.input.synthetic),
        real_shards=list(snakemake.input.real),
        out_dir=snakemake.params.out_dir,
        params={**snakemake.params.evaluate, "image_size": snakemake.params.train["image_size"],
                "num_input_views": snakemake.params.train["num_input_views"]},
        ground_truth=snakemake.input.ground_truth[0] if snakemake.input.ground_truth else None,
    )
