"""Agents, contract-net allocation and orchestration patterns (built in later issues).

Note: another popular SDK also installs a top-level package named ``agents``;
install agentmesh in its own virtual environment to avoid the clash.
"""

__all__: list[str] = []
