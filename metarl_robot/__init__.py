"""metarl_robot: meta-train in simulation, export ONNX meta-policies, adapt on the robot.

The core package never imports a simulator or ROS; ``metarl_robot.runtime`` needs only numpy and
onnxruntime.
"""

__version__ = "0.1.0"
