"""Solver (recipe): each choice is the solver its name says, at the settings its name says, exactly what that
solver's own node gives with those widget values (the blueprints expose this node's choice)."""

from __future__ import annotations

import pytest

from testbed.solver_nodes import FEW_STEPS, SOLVER_NODES, solver_sampler

#: recipe -> (SOLVER_NODES name, widget changes from that node's defaults), written out from the names
RECIPES = {
    "BDIA (gamma 0.8)": ("bdia", {"gamma": 0.8, "gamma_rule": "scaled"}),  # 0.8 at 25 steps, scaled elsewhere
    "EDICT (p 0.93, scaled)": ("edict", {"p": 0.93, "p_rule": "scaled"}),
    "Rex (euler)": ("rex", {"tableau": "euler"}),
    "BELM": ("belm", {}),
    "DDIM": ("ddim", {}),
    "AIDI (Anderson)": ("aidi", {"variant": "A"}),
    "EES(2,5)": ("ees25", {}),
    "RF-Solver": ("rf_solver", {}),
    "FireFlow": ("fireflow", {}),
}


def test_every_choice_is_listed(node_classes):
    options = node_classes["ExactInversion_SolverRecipe"].define_schema().inputs[0].options
    assert options == list(RECIPES)


@pytest.mark.parametrize("recipe", sorted(RECIPES))
@pytest.mark.parametrize("state_dtype", ["auto", "float32"])
def test_recipe_is_the_solver_node_at_its_settings(node_classes, recipe, state_dtype):
    name, changes = RECIPES[recipe]
    ours = node_classes["ExactInversion_SolverRecipe"].execute(solver=recipe, state_dtype=state_dtype).result[0]
    theirs = solver_sampler(node_classes, name, state_dtype=state_dtype, **changes)
    assert type(ours.solver) is type(theirs.solver)
    assert ours.solver.params() == theirs.solver.params()
    assert ours.state_dtype == state_dtype


def test_default_is_the_few_step_recipe_of_the_toy_workflows(node_classes):
    """The default (BDIA gamma 0.8) is what the embedded model's workflows use at 25 steps (testbed FEW_STEPS)."""
    default = node_classes["ExactInversion_SolverRecipe"].define_schema().inputs[0].default
    name, changes = RECIPES[default]
    assert changes == {**changes, **FEW_STEPS[name]} and SOLVER_NODES[name][0] == "ExactInversion_BDIASolver"


def test_unknown_choice_names_the_node_and_input(node_classes):
    with pytest.raises(ValueError, match=r"^Solver \(recipe\): input 'solver' must be one of BDIA \(gamma 0.8\)"):
        node_classes["ExactInversion_SolverRecipe"].execute(solver="BDIA", state_dtype="auto")
