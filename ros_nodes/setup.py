"""colcon's ament_python build runs this file; the package is described in setup.cfg."""

from setuptools import setup

setup()
