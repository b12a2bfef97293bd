from workflow_scripts.entry._run import rule_logging

with rule_logging(snakemake) as log:
    import sys

    import torch

    from model.train import PREEMPTED_EXIT_CODE, Preempted, publish_outputs, run_training
    from workflow_scripts.launch import launch_training

    settings = dict(snakemake.params.train)
    gpus = int(settings.get("gpus", 0))
    init = snakemake.input.init[0] if snakemake.input.get("init") else settings.get("init_checkpoint")
    job = dict(settings, stage=snakemake.params.stage, seed=snakemake.params.seed,
               holdout_fraction=snakemake.params.holdout_fraction,
               synthetic=list(snakemake.input.get("synthetic", [])), real=list(snakemake.input.get("real", [])))
    out_dir = snakemake.params.out_dir
    if gpus > 1:
        # One process per GPU through torchrun (several nodes: see docs/slurm.md).
        code = launch_training(job, out_dir, nproc_per_node=gpus, init_checkpoint=init)
        if code != 0:
            log.error("training exited with code %d; rerun resumes from the last checkpoint", code)
            sys.exit(code)
        publish_outputs(out_dir, snakemake.output.checkpoint, snakemake.output.log_csv)
    else:
        if not torch.cuda.is_available():
            torch.set_num_threads(snakemake.threads)  # stay within the job's cores
        try:
            run_training(job, out_dir, init_checkpoint=init, checkpoint_out=snakemake.output.checkpoint,
                         log_csv_out=snakemake.output.log_csv)
        except Preempted:
            log.warning("preempted: checkpoint saved; rerun the workflow to resume (exit %d)", PREEMPTED_EXIT_CODE)
            sys.exit(PREEMPTED_EXIT_CODE)
