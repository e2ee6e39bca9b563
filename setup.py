"""metarl_robot: meta-RL for real robots. Install with `make test` / `make demo`, or see README.md."""

from pathlib import Path

from setuptools import find_packages, setup

ROS_PACKAGE = "metarl_robot_ros"
ROS_MSGS = ["std-msgs", "sensor-msgs", "geometry-msgs", "trajectory-msgs", "diagnostic-msgs", "std-srvs"]
here = Path(__file__).parent

setup(
    name="metarl_robot",
    version="0.1.0",
    description="Meta-train grasping policies in PyBullet, export ONNX meta-policies, adapt on the robot under ROS 2",
    long_description=(here / "README.md").read_text() if (here / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["metarl_robot", "metarl_robot.*", "sim", "sim.*", "ros_nodes", "ros_nodes.*"]),
    package_data={"metarl_robot": ["py.typed"]},
    install_requires=[
        # torch is installed first, pinned (see Makefile and constraints.txt); this range admits it.
        "torch>=2.4",
        "numpy>=1.24",
        "onnx>=1.16",
        "onnxscript>=0.3",
        "onnxruntime>=1.18",
        "safetensors>=0.4",
        "cryptography>=42",  # bundle signing (ed25519); the runtime imports it only for trusted_keys
        "gymnasium>=1.1",
        "pybullet>=3.2.6",
        "PyYAML>=6",
        "mcap>=1.2",  # node recordings (rosbag2's default format)
        "tensorboard>=2.14",
        "tqdm>=4.60",
        "matplotlib>=3.7",
    ],
    extras_require={
        "ros": ["ros-rclpy[fastrtps]"] + [f"ros-{m}" for m in ROS_MSGS],
        "distributed": ["ray>=2.9"],
        "dev": ["pytest>=8", "hypothesis>=6"],
        "mutation": ["mutmut>=3.8"],  # make mutation (docs/testing.md)
    },
    entry_points={
        "console_scripts": [
            "metarl-robot=metarl_robot.cli:main",
            "metarl_policy_node=ros_nodes.policy_node:main",
            "metarl_sim_robot_node=ros_nodes.sim_robot_node:main",
        ],
        # Verbs of `metarl-robot` that live outside the core: the ROS 2 ones live with the nodes.
        "metarl_robot.cli_verbs": [
            "demo=ros_nodes.cli:add_demo",
            "deploy=ros_nodes.cli:add_deploy",
            "replay=ros_nodes.cli:add_replay",
        ],
    },
    data_files=[
        (f"share/{ROS_PACKAGE}/launch", [str(p) for p in sorted(Path("launch").glob("*.launch.py"))]),
        (f"share/{ROS_PACKAGE}/config", [str(p) for p in sorted(Path("launch").glob("*.yaml"))]),
        (f"share/{ROS_PACKAGE}", ["ros_nodes/package.xml"]),
        ("share/ament_index/resource_index/packages", [f"ros_nodes/resource/{ROS_PACKAGE}"]),
    ],
)
