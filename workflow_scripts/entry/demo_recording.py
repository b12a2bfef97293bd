from workflow_scripts.entry._run import rule_logging

with rule_logging(snakemake) as log:
    from pathlib import Path

    from workflow_scripts.demo import DemoConfig, run_demo_recording

    run_demo_recording(snakemake.input.body_model, str(Path(snakemake.output.ground_truth).parent),
                       DemoConfig.from_dict(dict(snakemake.params.demo)))
