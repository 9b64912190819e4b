"""The deployment files users copy: KubeRay manifest and Serve config."""
import json
from pathlib import Path

import yaml

from ray_numa.options import parse
from ray_numa.plugin import plugin_env

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_kuberay_manifest_enables_the_plugin_on_every_group():
    doc = yaml.safe_load((EXAMPLES / "kuberay/raycluster.yaml").read_text())
    assert doc["kind"] == "RayCluster"
    specs = [doc["spec"]["headGroupSpec"]] + doc["spec"]["workerGroupSpecs"]
    expected = json.loads(plugin_env()["RAY_RUNTIME_ENV_PLUGINS"])
    for spec in specs:
        [container] = spec["template"]["spec"]["containers"]
        env = {e["name"]: e["value"] for e in container["env"]}
        assert json.loads(env["RAY_RUNTIME_ENV_PLUGINS"]) == expected
        assert env["RAY_RUNTIME_ENV_PLUGIN_SCHEMAS"].endswith("ray_numa/schemas")
        assert "SYS_NICE" in container["securityContext"]["capabilities"]["add"]


def test_serve_config_is_a_valid_serve_schema_with_a_valid_numa_bind():
    from ray.serve.schema import ServeDeploySchema
    raw = yaml.safe_load((EXAMPLES / "serve_config/config.yaml").read_text())
    schema = ServeDeploySchema.parse_obj(raw)
    [app] = schema.applications
    [dep] = app.deployments
    parse(dep.ray_actor_options.runtime_env["numa_bind"])
    assert dep.ray_actor_options.num_gpus == 1
