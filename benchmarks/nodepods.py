"""The Pods the real-node sections run: an application container and the agent from its image.

Both share an emptyDir at ``/shared`` (read-only for the agent); the agent learns its Pod from the
downward API, as the chart renders it, and runs with the chart's restricted security context.
"""

from __future__ import annotations

from collections.abc import Mapping

from benchmarks.common import JSON
from tests.harness.node import NODE_NAME, RealNode
from tests.harness.workloads import AGENT_SA

APP = "app"
_DOWNWARD_API = (
    ("POD_NAME", "metadata.name"),
    ("POD_NAMESPACE", "metadata.namespace"),
    ("POD_UID", "metadata.uid"),
)


def app_and_agent_pod(
    node: RealNode, name: str, *, bench: str, gate: str, script: str, settings: Mapping[str, str]
) -> JSON:
    """A Pod on the real node: ``script`` in the app container, the agent with ``settings``."""
    env = [
        {"name": var, "valueFrom": {"fieldRef": {"fieldPath": path}}} for var, path in _DOWNWARD_API
    ] + [{"name": k, "value": v} for k, v in settings.items()]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"bench": bench}},
        "spec": {
            "nodeName": NODE_NAME,
            "serviceAccountName": AGENT_SA,
            "readinessGates": [{"conditionType": gate}],
            "terminationGracePeriodSeconds": 5,
            "volumes": [{"name": "shared", "emptyDir": {}}],
            "containers": [
                {
                    "name": APP,
                    "image": node.images.redis.name,
                    "imagePullPolicy": "Never",
                    "command": ["/bin/sh", "-c", script],
                    "volumeMounts": [{"name": "shared", "mountPath": "/shared"}],
                },
                {
                    "name": "readiness-gate",
                    "image": node.images.agent.name,
                    "imagePullPolicy": "Never",
                    "env": env,
                    "volumeMounts": [{"name": "shared", "mountPath": "/shared", "readOnly": True}],
                    "securityContext": {
                        "runAsNonRoot": True,
                        "readOnlyRootFilesystem": True,
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                    },
                },
            ],
        },
    }
