from workflow_scripts.entry._run import rule_logging

with rule_logging(snakemake) as log:
    from workflow_scripts.synthetic import SyntheticConfig, write_synthetic_shard

    cfg = dict(snakemake.params.synthetic)
    for key in ("num_shards", "test_shards"):
        cfg.pop(key)
    # Test shards draw from a disjoint seed stream, so their poses are never seen in training.
    split_offset = {"train": 0, "test": 1_000_000}[snakemake.wildcards.split]
    # The rule's other threads prepare samples in worker processes while this one renders.
    write_synthetic_shard(snakemake.input.body_model, snakemake.output[0], shard_index=split_offset + int(snakemake.wildcards.index),
                          seed=snakemake.params.seed, cfg=SyntheticConfig.from_dict(cfg), workers=snakemake.threads - 1)
