"""Installs the Helm chart on a real kube-apiserver with Helm's own library (helm-sdkpy), once per
value set helm_lint.py uses, with server-side validation on (every rendered object must be
accepted); then upgrades one release to another value set and uninstalls every release.

Usage: helm_real.py KUBECONFIG. Run by tests/real_apiserver (the chart case) against the test
control plane, which first installs the chart's CRDs and the Prometheus Operator's kinds; exits non-zero, naming the step, on any failure."""
import asyncio, sys

import helm_sdkpy
import yaml

from chart_values import CHART, OVERLAYS, merge

async def main(kubeconfig: str) -> int:
    base = yaml.safe_load((CHART / "values.yaml").read_text())
    releases = []
    for i, (name, overlay) in enumerate(OVERLAYS.items()):
        release, namespace = f"values-{i}", f"helm-values-{i}"
        config = helm_sdkpy.Configuration(namespace=namespace, kubeconfig=kubeconfig)
        try:
            await helm_sdkpy.Install(config).run(
                release, str(CHART), values=merge(base, overlay), create_namespace=True,
                wait=False, timeout=120, disable_openapi_validation=False)
        except Exception as e:  # noqa: BLE001 — any failure is reported with its step
            print(f"helm install [{name}] on the real API server: FAILED: {e}")
            return 1
        status = await helm_sdkpy.Status(config).run(release)
        state = (status.get("info") or {}).get("status")
        print(f"helm install [{name}] on the real API server: {state}")
        if state != "deployed":
            return 1
        releases.append((release, config))
    # Upgrade the first release to the last value set, then uninstall everything.
    names = list(OVERLAYS)
    release, config = releases[0]
    try:
        await helm_sdkpy.Upgrade(config).run(
            release, str(CHART), values=merge(base, OVERLAYS[names[-1]]), wait=False, timeout=120,
            disable_openapi_validation=False)
    except Exception as e:  # noqa: BLE001
        print(f"helm upgrade [{names[0]} -> {names[-1]}]: FAILED: {e}")
        return 1
    status = await helm_sdkpy.Status(config).run(release)
    print(f"helm upgrade [{names[0]} -> {names[-1]}]: {(status.get('info') or {}).get('status')}, revision {status.get('version')}")
    if status.get("version") != 2:
        return 1
    for release, config in releases:
        try:
            await helm_sdkpy.Uninstall(config).run(release, wait=False, timeout=120)
        except Exception as e:  # noqa: BLE001
            print(f"helm uninstall {release}: FAILED: {e}")
            return 1
        try:
            await helm_sdkpy.Status(config).run(release)
            print(f"helm uninstall {release}: the release is still there")
            return 1
        except helm_sdkpy.HelmError:
            print(f"helm uninstall {release}: gone")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__)
        sys.exit(2)
    sys.exit(asyncio.run(main(sys.argv[1])))
