# Mitogen's linear strategy (https://mitogen.networkgenomics.com/ansible_detailed.html), found
# through the installed ansible_mitogen package so that ansible.cfg needn't know where the
# venv is. Mitogen keeps one Python interpreter per host for the whole run instead of starting
# one per task: a repeat site.yml on one host took 103 s with it against 274 s without, on the
# same loaded machine. Without the package (ansible from elsewhere) this is Ansible's own linear
# strategy, with a warning; ANSIBLE_STRATEGY=linear turns Mitogen off for one run.
from __future__ import annotations

from ansible.utils.display import Display

try:
    from ansible_mitogen.plugins.strategy.mitogen_linear import StrategyModule
except ImportError:
    from ansible.plugins.strategy.linear import StrategyModule

    Display().warning("mitogen is not installed: provisioning runs with the slower linear strategy")

__all__ = ["StrategyModule"]
