import os
import random

# Every ROS process a test starts keeps DDS discovery on loopback and on a domain of its own.
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", str(random.Random(os.getpid()).randint(100, 200)))
os.environ.setdefault("MPLBACKEND", "Agg")
