"""The job examples/job_submit.py submits: GPU actors under the job's runtime_env
(`ray job submit --runtime-env-json '{"numa_bind": "auto"}'`) print their binding."""
import ray

ray.init()     # the job's cluster (RAY_ADDRESS, set by Ray's job supervisor)


@ray.remote(num_gpus=1)
class Model:
    def where(self):
        import ray_numa
        b = ray_numa.current_binding()
        return ray.get_gpu_ids(), b.status, b.cpus, b.reason


actors = [Model.remote() for _ in range(int(ray.cluster_resources().get("GPU", 0)))]
for gpu, status, cpus, reason in sorted(ray.get([a.where.remote() for a in actors])):
    print(f"job actor GPU {gpu}: {status} - CPUs {cpus or '-'} ({reason})")
