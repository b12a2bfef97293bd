# The built-in demo: the MAMMAL mouse walking in an arena, filmed by a 6-camera rig. Written as
# real videos + a DANNCE calibration; the ground truth is kept aside for evaluation only.


rule demo_recording:
    input:
        body_model="results/body_model/mammal_mouse.npz",
    output:
        videos=expand("results/demo_recording/videos/cam{i}.mp4", i=range(1, config["demo"]["num_cameras"] + 1)),
        calibration=expand("results/demo_recording/calibration/hires_cam{i}_params.mat", i=range(1, config["demo"]["num_cameras"] + 1)),
        ground_truth="results/demo_recording/ground_truth.h5",
    params:
        demo=config["demo"],
    log:
        log_path("demo_recording"),
    benchmark:
        bench_path("demo_recording")
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../envs/render.yaml"
    script:
        "../workflow_scripts/entry/demo_recording.py"
