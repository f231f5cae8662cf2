# Writes eleven hostile weight files for the check in fuzz/hostile/README.md.
#   python3 make_files.py SHARED_REFERENCE_DIR OUT_DIR
import os, pickle, struct, zipfile, json, random, io, shutil, sys
R=sys.argv[1].rstrip('/')+'/'
out=sys.argv[2].rstrip('/')+'/'
os.makedirs(out, exist_ok=True)
good_pth=open(R+'tiny18.pth','rb').read()
good_st=open(R+'tiny18.safetensors','rb').read()
open(out+'01-empty.pth','wb').write(b'')
open(out+'02-truncated.pth','wb').write(good_pth[:len(good_pth)//2])
random.seed(1); open(out+'03-random.safetensors','wb').write(bytes(random.getrandbits(8) for _ in range(4096)))
open(out+'04-header-2^62.safetensors','wb').write(struct.pack('<Q',1<<62)+b'{}')
# offsets past the end: rewrite the header of the good safetensors
n=struct.unpack('<Q',good_st[:8])[0]; h=json.loads(good_st[8:8+n]); k=[x for x in h if x!='__metadata__'][0]
h[k]['data_offsets']=[h[k]['data_offsets'][0], h[k]['data_offsets'][0]+ (1<<40)]
hb=json.dumps(h).encode(); open(out+'05-offsets-past-end.safetensors','wb').write(struct.pack('<Q',len(hb))+hb+good_st[8+n:])
# wrong shape: conv1.weight claims another shape with the same byte count
h=json.loads(good_st[8:8+n]); s=h['conv1.weight']['shape']; h['conv1.weight']['shape']=[s[1],s[0],s[2],s[3]]
hb=json.dumps(h).encode(); open(out+'06-wrong-shape.safetensors','wb').write(struct.pack('<Q',len(hb))+hb+good_st[8+n:])
shutil.copy(R+'tiny50.pth', out+'07-another-network.pth')
# a pickle that asks to run a shell command, inside a torch.save-style zip
class Evil:
    def __reduce__(self): return (os.system, ('echo pwned > ' + os.path.join(os.path.abspath(out), 'PWNED'),))
def torch_zip(name, pkl, extra=()):
    with zipfile.ZipFile(out+name,'w',zipfile.ZIP_STORED) as z:
        z.writestr('archive/data.pkl', pkl); z.writestr('archive/version','3\n')
        for n_, d in extra: z.writestr(n_, d)
torch_zip('08-pickle-runs-shell.pth', pickle.dumps(Evil(), protocol=2))
# a zip entry that escapes its folder, and a compressed "bomb" entry claiming gigabytes
with zipfile.ZipFile(out+'09-zip-traversal-and-bomb.pth','w') as z:
    z.writestr('archive/data.pkl', pickle.dumps({'a':1},protocol=2))
    z.writestr('../../etc/evil', b'x')
    z.writestr(zipfile.ZipInfo('archive/data/0'), b'\0'*(64<<20), compress_type=zipfile.ZIP_DEFLATED)
# a pickle nested 100,000 deep (recursion)
deep=b'\x80\x02'+b']'*100000+b'.'
torch_zip('10-deep-recursion.pth', deep)
# a storage that claims 2^62 elements
p=(b'\x80\x02ccollections\nOrderedDict\nq\x00)Rq\x01X\x0c\x00\x00\x00conv1.weightq\x02ctorch._utils\n_rebuild_tensor_v2\nq\x03((X\x07\x00\x00\x00storageq\x04ctorch\nFloatStorage\nq\x05X\x01\x00\x00\x000q\x06X\x03\x00\x00\x00cpuq\x07\x8a\x08\x00\x00\x00\x00\x00\x00\x00\x40tq\x08QK\x00(K\x08K\x03K\x07K\x07tq\t(K\x93K1K\x07K\x01tq\n\x89h\x00)Rq\x0btq\x0cRq\rs.')
torch_zip('11-storage-2^62.pth', p, [('archive/data/0', b'\0'*16)])
print(sorted(os.listdir(out)))
