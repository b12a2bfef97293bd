from workflow_scripts.entry._run import rule_logging

with rule_logging(snakemake) as log:
    from model.evaluate import run_evaluate

    ev = snakemake.params.evaluate
    params = {
        "holdout_fraction": ev["holdout_fraction"],
        "surface": {"tau": ev["surface_tau"]},
        "lpips_weights": ev["lpips_weights"],
        "max_synthetic_samples": ev["max_samples"],
        "max_real_frames": ev["max_real_frames"],
        "input_elevation_deg": ev["input_elevation_deg"],
        "image_size": snakemake.params.train["image_size"],
        "num_input_views": snakemake.params.train["num_input_views"],
        "ground_truth": snakemake.input.ground_truth[0] if snakemake.input.ground_truth else None,
    }
    metrics = run_evaluate(snakemake.input.checkpoint, list(snakemake.input.synthetic), list(snakemake.input.real),
                           snakemake.params.out_dir, params)
    log.info("lead metrics: %s", metrics.get("lead"))
