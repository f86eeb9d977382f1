"""The README's main job, `gpufleet demo`, runs end to end and says where the data is."""

import subprocess
import sys


def test_demo_runs_the_whole_pipeline_and_reports(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "gpufleet.cli", "demo", "--nodes", "3", "--gpus-per-node", "2", "--duration", "3",
         "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "published 18 GPU-windows" in done.stdout
    assert "gpu:          18 GPU-windows" in done.stdout
    assert "chargeback reconciles with the fleet totals: yes" in done.stdout
    assert (tmp_path / "reports" / "chargeback.csv").exists()
