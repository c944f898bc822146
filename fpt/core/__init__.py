"""The bottom floor: facts about the host (host.py) and files that survive kills and full disks (files.py).
Nothing here imports the rest of fpt but fpt/errors.py."""
