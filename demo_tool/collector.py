"""MAO demo collector: writes three control snapshots and one data file per run.

The snapshots are two similar values then one about 45 % higher, so every run trips the spike
rule (baseline = mean of the two before the latest; spike when |gain| > 20 %).
Output goes to /usr/src/app/data, the directory MAO mounts the tool's dataset at.
"""

import datetime
import pathlib
import sys

DATA_DIR = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "/usr/src/app/data")
SNAPSHOT_VALUES = (100.0, 102.0, 146.0)


def next_index(data_dir: pathlib.Path) -> int:
    """1 + the highest numeric value part of the existing control-<n>.csv files (0 if none)."""
    indices = [
        int(path.stem.removeprefix("control-"))
        for path in data_dir.glob("control-*.csv")
        if path.stem.removeprefix("control-").isdigit()
    ]
    return max(indices, default=0) + 1


def main() -> None:
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    first = next_index(DATA_DIR)
    stamp = datetime.datetime.now(datetime.UTC).isoformat()
    rows = ["snapshot,collected_at,value"]
    for offset, value in enumerate(SNAPSHOT_VALUES):
        index = first + offset
        (DATA_DIR / f"control-{index}.csv").write_text(f"{value}\n")
        rows.append(f"{index},{stamp},{value}")
        print(f"snapshot {index}: control value {value}")
    (DATA_DIR / f"data-{first}.csv").write_text("\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
