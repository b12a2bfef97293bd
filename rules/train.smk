# GS-LRM training: synthetic pre-training, then real-data fine-tuning (real + synthetic mix).
# GPU rules: they ask for GPUs through the `gpu` resource only (see profiles/slurm).


rule train_synthetic:
    input:
        synthetic=synthetic_shards("train"),
    output:
        checkpoint="results/train/{experiment}/synthetic/checkpoint.pt",
        log_csv="results/train/{experiment}/synthetic/log.csv",
    params:
        train=lambda w: experiment_settings(w.experiment, "train_synthetic"),
        seed=config["seed"],
        stage="synthetic",
        holdout_fraction=0.0,
        out_dir=lambda w: f"results/train/{w.experiment}/synthetic",
    log:
        log_path("train_synthetic", "{experiment}"),
    benchmark:
        bench_path("train_synthetic", "{experiment}")
    threads: 2
    resources:
        **train_resources("train_synthetic"),
    conda:
        "../envs/train.yaml"
    script:
        "../workflow_scripts/entry/train.py"


rule train_mouse_model:
    input:
        init=lambda w: [] if skip_synthetic(w.experiment) else [f"results/train/{w.experiment}/synthetic/checkpoint.pt"],
        real=all_real_shards(),
        synthetic=synthetic_shards("train"),
    output:
        checkpoint="results/train/{experiment}/mouse/checkpoint.pt",
        log_csv="results/train/{experiment}/mouse/log.csv",
    params:
        train=lambda w: experiment_settings(w.experiment, "train_mouse"),
        seed=config["seed"],
        stage="mouse",
        holdout_fraction=config["evaluate"]["holdout_fraction"],
        out_dir=lambda w: f"results/train/{w.experiment}/mouse",
    log:
        log_path("train_mouse", "{experiment}"),
    benchmark:
        bench_path("train_mouse", "{experiment}")
    threads: 2
    resources:
        **train_resources("train_mouse"),
    conda:
        "../envs/train.yaml"
    script:
        "../workflow_scripts/entry/train.py"
