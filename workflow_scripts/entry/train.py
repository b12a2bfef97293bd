from workflow_scripts.entry._run import rule_logging

with rule_logging(snakemake) as log:
    from model.train import run_training

    run_training(
        stage=snakemake.params.stage,
        settings=dict(snakemake.params.train),
        shards={"synthetic": list(snakemake.input.get("synthetic", snakemake.input.get("shards", []))),
                "real": list(snakemake.input.get("real", []))},
        out_dir=snakemake.params.out_dir,
        init_checkpoint=snakemake.input.get("init"),
        seed=snakemake.params.seed,
        holdout_fraction=snakemake.params.get("holdout_fraction", 0.0),
        checkpoint_out=snakemake.output.checkpoint,
        log_csv_out=snakemake.output.log_csv,
    )
