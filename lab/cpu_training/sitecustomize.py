"""TEST-ONLY: installs the cuda -> cpu device choice (cpu_device.py) in every Python process of a CPU training run.

Active only where lab/cpu_training/ is on PYTHONPATH, which only launch.py sets (for itself and its children).
"""

import cpu_device

cpu_device.install()
