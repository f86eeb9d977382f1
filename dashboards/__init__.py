"""Grafana dashboards, provisioning and alert rules for gpufleet, generated with grafanalib.

`build(out_dir)` writes everything `gpufleet dashboards build --out DIR` produces; see
provisioning.py for the layout and panels.py for what each dashboard shows.
"""

from .provisioning import build

__all__ = ["build"]
