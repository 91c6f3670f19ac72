// Flamenco 3 job type: run an Interactive3D prompt batch on a Ray cluster and save one .blend per prompt.
// UNTESTED: no Flamenco Manager was available where this was written; see docs/cluster.md.
// Install: copy this file into the Manager's `scripts/` folder and restart the Manager.
// One task: a Flamenco Worker (which must reach the Ray head and the shared --out folder) runs
// scripts/blender_batch.py --ray with the Python that has bpy and Ray (the project's .venv).

const JOB_TYPE = {
    label: "Interactive3D batch (Ray)",
    description: "Text → 3D for a file of prompts on a Ray GPU cluster; one .blend per prompt",
    settings: [
        { key: "python", type: "string", required: true, description: "Python with interactive3d[cluster] and bpy, e.g. /opt/interactive3d/.venv/bin/python" },
        { key: "script", type: "string", required: true, description: "path of scripts/blender_batch.py in that installation" },
        { key: "ray_address", type: "string", required: true, description: "Ray head, e.g. ray-head:6379" },
        { key: "prompts", type: "string", subtype: "file_path", required: true, description: "prompt file (one prompt per line)" },
        { key: "out", type: "string", subtype: "dir_path", required: true, description: "output folder on shared storage" },
        { key: "model", type: "string", required: false, default: "", description: "diffusers folder or hub id (empty: the default)" },
        { key: "gpus_per_job", type: "int32", default: 1, description: "GPUs per prompt" },
        { key: "retries", type: "int32", default: 1, description: "re-runs of a failed prompt" },
        { key: "preset", type: "string", default: "default", choices: ["default", "preview"], description: "pipeline sizes" },
    ],
};

function compileJob(job) {
    const s = job.settings;
    const args = [
        s.script, "--ray", s.ray_address, "--prompts", s.prompts, "--out", s.out,
        "--gpus-per-job", String(s.gpus_per_job), "--retries", String(s.retries), "--preset", s.preset,
    ];
    if (s.model) {
        args.push("--model", s.model);
    }
    const task = author.Task("interactive3d-batch", "blender");
    task.addCommand(author.Command("exec", { exe: s.python, args: args }));
    job.addTask(task);
}
