"""Platform-wide roles: the one place that says what being an admin or an auditor means.

Team roles (member, lead) and who may do what with requests and grants are quotas.policies; these
are the roles every app shares. `User` exposes them as properties for templates.
"""

from typing import Protocol


class RoleFlags(Protocol):
    is_platform_admin: bool
    is_auditor: bool
    is_superuser: bool


def is_admin(user: RoleFlags) -> bool:
    """A platform admin: approves at the platform stage, manages clusters, pools and grants. A
    superuser is one too, in the browser and the API alike."""
    return bool(user.is_platform_admin or user.is_superuser)


def sees_everything(user: RoleFlags) -> bool:
    """Admins and auditors read every team's rows; everyone else only their own teams'."""
    return is_admin(user) or bool(user.is_auditor)


def is_read_only(user: RoleFlags) -> bool:
    """Auditors read everything and change nothing, whatever teams they also belong to."""
    return bool(user.is_auditor) and not is_admin(user)
