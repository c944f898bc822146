"""Layer 1, the bottom: errors, the Registry, the validated TrainConfig, group names, facts about the host
(host.py) and files that survive kills and full disks (files.py). Nothing here imports the rest of fpt."""
