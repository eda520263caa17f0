"""The operator-facing README: commands run inside containers go through the entrypoint (so secrets
mounted as MMDLM_*_FILE files are loaded), the GPU-node prerequisites and the Operate section exist and
name what they must, and nothing still tells users to handle a migration Job that no longer exists."""

from __future__ import annotations

import re

from tests.deploy.support import REPO

README = (REPO / "README.md").read_text()


def test_exec_commands_go_through_the_entrypoint() -> None:
    execs = [
        line for line in README.splitlines() if re.search(r"\b(docker compose|kubectl)\b.*\bexec\b", line)
    ]
    assert len(execs) >= 2, execs
    for line in execs:
        words = line.split()
        # the word `mmdlm` as a command, not as the namespace of `kubectl -n mmdlm`
        commands = [
            i for i, w in enumerate(words) if w == "mmdlm" and words[i - 1] not in ("-n", "--namespace")
        ]
        assert commands, line
        for i in commands:
            assert words[i - 1] == "mmdlm-entrypoint", (
                f"mmdlm without the entrypoint (no file secrets): {line}"
            )


def _section(title: str) -> str:
    match = re.search(rf"^### {re.escape(title)}\n(.*?)(?=^#{{2,3}} )", README + "\n## end", re.S | re.M)
    assert match, f"README has no section {title!r}"
    return match.group(1)


def test_gpu_node_prerequisites() -> None:
    text = _section("GPU nodes: prerequisites")
    for needed in ("device plugin", "GPU Feature Discovery", "nvidia.com/gpu.present=true", "Container Toolkit",
                   "Driver", "taint", "NVIDIA_VISIBLE_DEVICES"):  # fmt: skip
        assert needed in text, needed


def test_operate_section() -> None:
    text = _section("Operate")
    for needed in ("**Upgrade.**", "**Scale.**", "**Drain a GPU node.**", "**Restore a job after a lost node.**",
                   "mmdlm migrate", "/readyz", "maxSurge: 0", "Recreate", "HPA", "lease", "checkpoint"):  # fmt: skip
        assert needed in text, needed
    assert "job/mmdlm-migrate" not in README and "delete job mmdlm-migrate" not in README
