"""The built-in studies (``criteria``, ``toy``) and the registration of their config schemas."""

from __future__ import annotations


def register_schemas() -> None:
    """Register the built-in studies' schemas with Hydra's ConfigStore (``base_<study>``)."""
    from hydra.core.config_store import ConfigStore

    from hpo.sim.objective import SimulatedStudyConf
    from hpo.studies.criteria.config import CriteriaStudyConf
    from hpo.studies.toy import ToyStudyConf

    cs = ConfigStore.instance()
    cs.store(group="study", name="base_criteria", node=CriteriaStudyConf)
    cs.store(group="study", name="base_toy", node=ToyStudyConf)
    cs.store(group="study", name="base_simulated", node=SimulatedStudyConf)
