"""The value sets the chart is linted (helm_lint.py) and installed (helm_real.py) with."""
import copy
from pathlib import Path

CHART = Path(__file__).resolve().parent.parent / "charts" / "dbx-identity-operator"

OVERLAYS = {
    "workload identity (default auth)": {"azure": {"workloadIdentity": {"clientId": "00000000-0000-0000-0000-000000000001", "tenantId": "00000000-0000-0000-0000-000000000002"}}},
    "every option on": {
        "azure": {"workloadIdentity": {"clientId": "00000000-0000-0000-0000-000000000001"}, "caBundleConfigMap": "corp-ca"},
        "controller": {"namespaces": ["team-a", "team-b"], "credentialReferences": {"enabled": True}},
        "metrics": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True},
                    "grafanaDashboard": {"enabled": True, "annotations": {"grafana_folder": "Platform"}}},
        "networkPolicy": {"enabled": True, "apiServerCidr": "10.0.0.1/32"},
    },
    "managed identity": {"azure": {"auth": "managed-identity", "managedIdentity": {"clientId": "00000000-0000-0000-0000-000000000003"}}},
    "client secret, one replica": {"azure": {"auth": "client-secret", "clientSecret": {"existingSecret": "azure-sp"}}, "replicaCount": 1, "leaderElection": {"enabled": False}},
}


def merge(base, overlay):
    out = copy.deepcopy(base)
    for k, v in overlay.items():
        out[k] = merge(out.get(k, {}), v) if isinstance(v, dict) else v
    return out


