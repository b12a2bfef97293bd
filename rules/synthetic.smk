# Synthetic mice with exact 3D truth: one job per shard, deterministic per (seed, split, index).


rule synthetic_shards:
    input:
        body_model="results/body_model/mammal_mouse.npz",
    output:
        "results/shards/synthetic/{split}_{index}.h5",
    params:
        synthetic=config["synthetic"],
        seed=config["seed"],
    log:
        log_path("synthetic_shards", "{split}_{index}"),
    benchmark:
        bench_path("synthetic_shards", "{split}_{index}")
    threads: 2  # 1 renders (and a writer thread compresses), 1 prepares the next samples
    resources:
        mem_mb=3000,
        runtime=120,
    conda:
        "../envs/render.yaml"
    script:
        "../workflow_scripts/entry/synthetic_shards.py"
