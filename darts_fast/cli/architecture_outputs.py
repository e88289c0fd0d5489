"""What a search leaves each epoch about its architecture, read from the network's
``architecture_tables`` (whatever the method and the candidates): the genotype (JSON and the
original's text), the candidate weights per edge (``alphas_epoch_NNN.json``), the pictures of the
cells and of the weights, and TensorBoard's images, histograms and text."""
import json

from ..spaces.cnn.genotypes import genotype_text, genotype_to_dict
from ..spaces.cnn.resources import genotype_cost
from . import visualize


def write(run, log, epoch, model, kept=None):
    """``kept``: the genotype the run keeps (its epoch, the genotype), where it is not this
    epoch's (a search stopped early)."""
    genotype = model.genotype()
    run.write_json(f"genotype_epoch_{epoch:03d}.json", genotype_record(genotype, epoch))
    write_genotype(run, *(kept or (epoch, genotype)))
    tables = model.architecture_tables()
    weights = {t.name: t.weights.float() for t in tables}
    alphas = {"epoch": epoch, "candidates": list(tables[0].candidates),
              "edges": [list(e) for e in tables[0].edges],
              **{name: w.tolist() for name, w in weights.items()},
              **{f"{t.name}_edges": t.edge_scale.float().tolist()
                 for t in tables if t.edge_scale is not None}}
    run.write_json(f"alphas_epoch_{epoch:03d}.json", alphas)
    run.write_bytes("alphas.png", visualize.alphas_png(tables, f"softmax(alpha), epoch {epoch}"))
    for name, w in weights.items():
        log.events.add_image(f"alphas/{name}", w, epoch, dataformats="HW")
        for edge, row in enumerate(w):
            log.events.add_histogram(f"alpha_{name}/edge_{edge:02d}", row, epoch)
    log.events.add_text("genotype", genotype_text(genotype), epoch)


def write_found(run, log, epoch, genotype):
    """The outputs of a search without alphas: the genotype its searcher stands at."""
    run.write_json(f"genotype_epoch_{epoch:03d}.json", genotype_record(genotype, epoch))
    write_genotype(run, epoch, genotype)
    log.events.add_text("genotype", genotype_text(genotype), epoch)


def genotype_record(genotype, epoch, **extra):
    """A genotype file's content: the cells, the epoch, the original's text, ``extra``, and the
    parameters and multiply-adds of the network that trains it with train's defaults."""
    params, flops = genotype_cost(genotype)
    return dict(genotype_to_dict(genotype), epoch=epoch, text=genotype_text(genotype), **extra,
                trained_network={"init_channels": 36, "layers": 20, "params": params,
                                 "flops": flops})


def write_genotype(run, epoch, genotype, **extra):
    """The genotype the run stands at: genotype.json (``genotype_record``) and .txt, and the
    cells' pictures."""
    run.write_json("genotype.json", genotype_record(genotype, epoch, **extra))
    run.write_text("genotype.txt", genotype_text(genotype) + "\n")
    run.write_bytes("normal.png", visualize.cell_png(
        genotype.normal, genotype.normal_concat, f"normal cell, epoch {epoch}"))
    run.write_bytes("reduction.png", visualize.cell_png(
        genotype.reduce, genotype.reduce_concat, f"reduction cell, epoch {epoch}"))


def write_named(run, named):
    """``genotypes.json``: the genotypes a search names at its end, ``[(name, genotype)]``."""
    run.write_json("genotypes.json", [dict(genotype_to_dict(g), name=name, text=genotype_text(g))
                                      for name, g in named])


def kept_text(run, model):
    """The text of the genotype the run stands at: genotype.json's, the model's before the
    first epoch is written."""
    try:
        with open(run.file("genotype.json")) as f:
            return json.load(f)["text"]
    except FileNotFoundError:
        return genotype_text(model.genotype())
