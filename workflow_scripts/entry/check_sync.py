from workflow_scripts.entry._run import rule_logging

with rule_logging(snakemake) as log:
    from workflow_scripts.atomic import write_json
    from workflow_scripts.frames import check_synchronized
    from workflow_scripts.video import probe_video

    videos = dict(snakemake.params.videos)
    infos = {cam: probe_video(path) for cam, path in videos.items()}
    check_synchronized(infos, dict(snakemake.params.offsets), videos)
    write_json(snakemake.output[0], {cam: {"path": videos[cam], "width": i.width, "height": i.height,
                                           "fps": float(i.fps), "num_frames": int(i.num_frames)} for cam, i in infos.items()})
