"""Lints the Helm chart with Helm's own library (helm-sdkpy) under several value sets, so every
template renders at least once. Fails on any warning or error. Run by .ci/run."""
import asyncio, shutil, sys, tempfile
from pathlib import Path

import helm_sdkpy
import yaml

from chart_values import CHART, OVERLAYS, merge

INFO = 1  # Helm severities: 1 info, 2 warning, 4 error

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
