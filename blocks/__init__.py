"""Prefect Block classes that users configure: the SSH server and the application."""

from blocks.application import Application, HealthCheck, Service, Timeouts
from blocks.ssh_server import SSHServer

__all__ = ["Application", "HealthCheck", "SSHServer", "Service", "Timeouts"]
