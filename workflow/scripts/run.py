# The one script every rule runs: its job (typed settings, execution settings, named files) to its stage.
from editscale.workflow import dispatch

dispatch.run(snakemake)
