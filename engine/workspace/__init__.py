"""The research workspace: a git repository where experiments are commits (repo), its
settings (config), making and adopting one (create), and the policy a patch must pass
(patch). Imports engine.base only.

The rest of pairlab imports the workspace's names from here."""

from engine.workspace.config import (CPU_BUDGET_S, GPU_BUDGET_S, METRIC_SOURCES,  # noqa: F401
                                     Config, WorkspaceError, check_relative_path)
from engine.workspace.create import (BRANCH_PREFIX, GITIGNORE, adopt, default_tag,  # noqa: F401
                                     default_templates, default_workspace_dir, init, open_or_init,
                                     stated_budget)
from engine.workspace.repo import (AGENT_AUTHOR, BASELINE_AUTHOR, HUMAN_AUTHOR,  # noqa: F401
                                   HUMAN_EDIT_TRAILER, PROGRAM_FILE, SavedChanges, Workspace,
                                   identity, is_workspace)
