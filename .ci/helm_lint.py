"""Lints the Helm chart with Helm's own library (helm-sdkpy) under several value sets, so every
template renders at least once. Fails on any warning or error. Run by .ci/run."""
import asyncio, copy, shutil, sys, tempfile
from pathlib import Path

import helm_sdkpy
import yaml

CHART = Path(__file__).resolve().parent.parent / "charts" / "dbx-identity-operator"
INFO = 1  # Helm severities: 1 info, 2 warning, 4 error

OVERLAYS = {
    "workload identity (default auth)": {"azure": {"workloadIdentity": {"clientId": "00000000-0000-0000-0000-000000000001", "tenantId": "00000000-0000-0000-0000-000000000002"}}},
    "every option on": {
        "azure": {"workloadIdentity": {"clientId": "00000000-0000-0000-0000-000000000001"}, "caBundleConfigMap": "corp-ca"},
        "controller": {"namespaces": ["team-a", "team-b"], "credentialReferences": {"enabled": True}},
        "metrics": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}},
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


async def main() -> int:
    base = yaml.safe_load((CHART / "values.yaml").read_text())
    failed = False
    for name, overlay in OVERLAYS.items():
        with tempfile.TemporaryDirectory() as tmp:
            chart = Path(tmp) / CHART.name
            shutil.copytree(CHART, chart)
            (chart / "values.yaml").write_text(yaml.safe_dump(merge(base, overlay)))
            result = await helm_sdkpy.Lint(helm_sdkpy.Configuration()).run(str(chart))
        problems = [m for m in result.get("Messages") or [] if m.get("Severity", 0) > INFO] + list(result.get("Errors") or [])
        print(f"helm lint [{name}]: {'OK' if not problems else problems}")
        failed |= bool(problems)
    return 1 if failed else 0


sys.exit(asyncio.run(main()))
