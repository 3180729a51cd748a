# Writes blob.bin: 2.5 MiB and 7 bytes, byte i being (7 * i) % 256.
SIZE = 5 * (1 << 19) + 7

with open("blob.bin", "wb") as out:
    out.write(bytes((7 * i) % 256 for i in range(SIZE)))
