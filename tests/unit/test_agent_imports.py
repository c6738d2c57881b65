"""What a 32-bit ARM board lacks: the agent must not need it.

PyNaCl (and so the nkeys package) and PyYAML have no wheel for armv7 and armv6, and
pyproject.toml leaves them out there. These tests run the agent's imports in a fresh
interpreter that cannot import them, as on such a board.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Makes the named modules unimportable, as if they were not installed.
BLOCK = """
import sys
for name in {blocked!r}:
    sys.modules[name] = None
"""


def run(code: str, *, blocked: tuple[str, ...], env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [sys.executable, "-c", BLOCK.format(blocked=blocked) + code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_agent_runs_without_pynacl_nkeys_or_pyyaml() -> None:
    out = run(
        "import shoal.agent.cli, shoal.agent.runtime, shoal.agent.handlers, shoal.agent.deploy\n"
        "from shoal.protocol import Signer, nkey\n"
        "from shoal.protocol.signing import verify_document\n"
        "signer = Signer.generate()\n"
        "doc = signer.sign_document({'v': 1, 'verb': 'ps'})\n"
        "assert verify_document(doc) == signer.public_key\n"
        "from shoal.protocol.connection import NatsOptions\n"
        "from shoal.agent.connection import connect_kwargs\n"
        "connect_kwargs(NatsOptions(nkey='/dev/null'))\n"
        "import nkeys\n"
        "assert nkeys.from_seed(signer.seed).public_key == signer.public_key.encode()\n"
        "loaded = sorted(m for m in ('yaml', 'nacl') if sys.modules.get(m) is not None)\n"
        "print(nkey.backend.name, loaded)\n",
        blocked=("nacl", "nkeys", "yaml"),
    )
    assert out.split() == ["ecdsa", "[]"]


def test_without_pyyaml_deploy_from_a_compose_file_says_what_to_install(tmp_path: Path) -> None:
    compose = tmp_path / "compose.yml"
    compose.write_text("services:\n  web:\n    image: busybox\n")
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            BLOCK.format(blocked=("yaml",))
            + "from shoal.controller.cli import main\n"
            + f"sys.argv = ['shoal', 'deploy', '-f', {str(compose)!r}]\n"
            + "main()\n",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "200", "NATS_URL": "nats://127.0.0.1:1"},
    )
    assert result.returncode == 2, result.stderr
    assert "needs PyYAML" in result.stderr
    assert "shoal[yaml]" in result.stderr
    assert "Traceback" not in result.stderr


# What a request, a deploy, a prune or a policy file needs, and an idle agent does not.
ON_FIRST_USE = (
    "shoal.agent.deploy",
    "shoal.agent.handlers",
    "shoal.agent.policy",
    "shoal.agent.prune",
)

IDLE_START = """
import asyncio
from shoal.agent.cli import main
from shoal.agent import Agent, AgentSettings
from shoal.agent.runtime import AgentStopped
from tests.fakes import FakeEngine

settings = AgentSettings.from_options(
    {{"servers": "nats://127.0.0.1:1", "insecure": True, "host_id": "idle",
     "state_dir": {state_dir!r}}}
)

async def start() -> Agent:
    # The whole start up to the NATS connection (trust, engine probe, service
    # recovery, journal), which retries until asked to stop.
    agent = Agent(settings, engine=FakeEngine())
    asyncio.get_running_loop().call_later(1.0, agent.request_stop)
    try:
        await agent.start()
    except AgentStopped:
        pass
    await agent.stop()
    return agent

agent = asyncio.run(start())
lazy = {lazy!r}
print("probed", agent.docker_reachable, "recovered", agent._recovered)
print("idle", sorted(m for m in lazy if m in sys.modules))
agent.policy, agent.keep_rules, agent.deployer
import shoal.agent.handlers
print("used", sorted(m for m in lazy if m in sys.modules))
"""


def test_an_idle_agent_loads_no_request_deploy_prune_or_policy_code(tmp_path: Path) -> None:
    out = run(IDLE_START.format(state_dir=str(tmp_path), lazy=ON_FIRST_USE), blocked=())
    lines = out.splitlines()
    assert lines[0] == "probed True recovered True"
    assert lines[1] == "idle []"
    assert lines[2] == f"used {sorted(ON_FIRST_USE)}"
