"""List every job-file section and key with its default and meaning: the generic
sections, then the sections of the job's task (`[job] task`, or --task)."""
HELP = "list every job-file key with its default (generic and the task's)"


def add_arguments(parser) -> None:
    parser.add_argument("job", nargs="?", metavar="JOB.toml", help="job file whose task's keys to list too")
    parser.add_argument("--task", default=None, help="list this task's keys (default: the job's task, "
                                                     "or ner without a job file)")


def run(args) -> int:
    from ..failure import agree_or_exit
    from ..jobfile import describe_keys, load_job

    cfg = agree_or_exit(lambda: load_job(args.job, task=args.task))
    print(f"# task: {cfg.job.task}")
    print(describe_keys({name: type(obj) for name, obj in cfg.task_sections.items()}))
    return 0
