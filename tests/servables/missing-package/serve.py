from flotilla_servable import serve

serve(lambda inputs: [None] * len(inputs), batched=True)
