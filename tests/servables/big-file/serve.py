from flotilla_servable import serve

with open("blob.bin", "rb") as f:
    DATA = f.read()


def run(_input):
    return {"size": len(DATA), "sum": sum(DATA)}


serve(run)
