import sys
from pathlib import Path

# The fakes module is shared by the tests and by the subprocess worker.
sys.path.insert(0, str(Path(__file__).parent))
