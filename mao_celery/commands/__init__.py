"""maoctl's commands, one module per command group; cli.py registers them on its root group.

Layout, for whoever adds a command:

- `common.py`: what every command module shares: `MaoGroup` (MAO errors to one line and an exit
  code), `fail`, `EXIT_CODES`, `json_option`, `current_node`, `show_entry`, `show_report`.
- `tool.py` (`maoctl tool ...`), `run.py`, `dataset.py`, `schedule.py` (also the schedule
  options `tool schedule` shares), `notifications.py`, `node.py` (`node ...` and the top-level
  commands about this node: members, status, config, repair), `completion.py`.
- A new command of a group: a function in the group's module, decorated with
  `@GROUP.command(...)`. A new group: a module whose group has `cls=MaoGroup`, and one
  `main.add_command` line in cli.py.

Commands only handle arguments: they call the service layer (`mao_celery.tools`) and print with
`mao_celery.render`. At the top they import only click and these light modules, so that
`maoctl --help` loads neither Celery, Docker, gRPC, Redis, rich nor pydantic
(tests/unit/test_imports.py).
"""
