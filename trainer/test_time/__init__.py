"""Test-time methods, chosen by the test-time config's ``test_time.type`` (contract:
``base/base_test_time.py``). Every ``TestTimeMethod`` defined in a module of this package is
available by its class name."""
from base.base_test_time import TestTimeMethod
from utils.registry import export_package

__all__ = export_package(__name__, globals(), TestTimeMethod)
