"""Which placement groups the scheduler may remove as left behind by a stopped run
(:func:`lorafarm.scheduler.runner.orphaned_placement_groups`), on a real local Ray: a group whose
creating actor died, never one whose creator lives, nor one a driver or a task created (Ray ties
those to the job), nor another job's. The cluster-level case (a job cancelled while its workers
start) is tests/test_eta_e2e.py."""

from __future__ import annotations

import pytest
from helpers import wait_for

from lorafarm.scheduler.runner import orphaned_placement_groups, remove_placement_groups

pytestmark = pytest.mark.integration


def test_only_groups_whose_creating_actor_died_are_orphans(ray_session):
    ray = ray_session
    from ray.util.placement_group import placement_group, remove_placement_group

    @ray.remote(num_cpus=0)
    class Creator:
        def make(self) -> str:
            pg = placement_group([{"CPU": 1}])
            ray.get(pg.ready())
            return pg.id.hex()

    @ray.remote(num_cpus=0)
    def make_in_a_task() -> str:
        pg = placement_group([{"CPU": 1}])
        ray.get(pg.ready())
        return pg.id.hex()

    job = ray.get_runtime_context().get_job_id()
    by_driver = placement_group([{"CPU": 1}])
    ray.get(by_driver.ready())
    by_task = ray.get(make_in_a_task.remote())
    creator = Creator.remote()
    by_actor = ray.get(creator.make.remote())
    try:
        assert orphaned_placement_groups(job) == []  # its creator lives
        ray.kill(creator, no_restart=True)
        assert wait_for(lambda: orphaned_placement_groups(job), 30, "the group to be orphaned") == [by_actor]
        assert orphaned_placement_groups("ffffffff") == []  # another job's: never ours to remove
        assert remove_placement_groups([by_actor]) == 1
        assert wait_for(lambda: orphaned_placement_groups(job) == [], 30, "the orphan to be removed")
    finally:
        remove_placement_group(by_driver)
        remove_placement_groups([by_task, by_actor])
